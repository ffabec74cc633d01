"""Provider adapters: one module per wire format. See base.py for the protocols."""
