"""The out-of-distribution flag: the detector the API runs, how ``evaluate`` fits and
calibrates it, and the synthetic out-of-distribution sets it is measured on.
"""
