"""The records, one module per family of ops. ``conformance.registry`` collects them."""
