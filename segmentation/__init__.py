"""2-D segmentation with uncertainty: U-Net, Stochastic Segmentation Networks, metrics, data.

``segmentation.ssn`` reimplements Monteiro et al. (NeurIPS 2020); ``segmentation.metrics``
holds Dice/IoU/GED/diversity/HM-IoU/ECE; ``segmentation.data`` and ``segmentation.readers``
load the phantom benchmark and JSRT/SCR, Montgomery, Shenzhen and LIDC crops.
"""
