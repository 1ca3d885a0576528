"""SemanticGAN (Li et al., CVPR 2021) for 2-D segmentation, in plain PyTorch and CPU-sized.

A StyleGAN2 generator with a ToSEG branch beside ToRGB at every resolution models the joint
distribution of images and masks. Training has two steps, as in the official code
(``nv-tlabs/semanticGAN_code``): (1) the GAN, with an image discriminator on all (unlabelled)
images and a multi-scale image+mask discriminator on the labelled pairs; (2) a W+ encoder with
the generator frozen. A mask is read off the ToSEG branch after inverting a test image: W+
from the encoder, refined by test-time optimisation against the image alone.

Modules, in reading order: ``layers`` (equalised/modulated convolutions, FIR resampling),
``generator``, ``discriminators``, ``losses``, ``encoder``, ``inference`` (the segmenter that
``segmentation.models`` loads and evaluates), ``config``, ``steps`` (one training iteration)
and ``train`` (the ``seg-train --model semantic-gan`` loop with checkpoints and resume).
"""
