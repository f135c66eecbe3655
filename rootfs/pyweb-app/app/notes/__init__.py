"""The notes service's modules."""
