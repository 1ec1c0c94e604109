"""View-sampler plugins: the augmented views of one image, for invariance methods. Base: jepaflow.interfaces.ViewSampler."""
