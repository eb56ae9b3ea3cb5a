"""Work in progress."""
class Favor: pass
