"""What the stages of maskrt hand to each other, in one place: the records written into graphs and beside engines,
the deploy graph's tensor names, the precision modes, the plugins' node contract, how files are read and written, and
the errors every stage raises. Torch-free, and the lowest layer: every other folder imports it, it imports none.
"""
