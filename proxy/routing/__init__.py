"""Model name -> target -> provider attempt."""
