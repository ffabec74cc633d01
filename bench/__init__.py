"""`make bench`: fake upstream, bare relay, load generator, report."""
