"""Work in progress."""
class Sparse: pass
