"""The demos, in one place (nothing here is needed to use kdviz's losses, recorder or views):

- :mod:`kdviz.demo.toy`: the AKL paper's toy teacher and students, every divergence between them (``kdviz toy``);
- :mod:`kdviz.demo.run`: ``kdviz demo``, every method distilling the embedded teacher, recorded and compared;
- :mod:`kdviz.demo.cma_example`: the recorded CMA run of notebook 02 (the README's picture, a benchmark).

Nothing is imported here, so ``kdviz toy`` does not load the training stack.
"""
