"""Images to arrays: the digits dataset, ``prepare``, the one preprocessing function, and
the per-image input features that the OOD flag, monitoring and the drift report share.
"""
