"""The ``evaluate`` stage: test metrics, baselines, the paired comparison of two
revisions' predictions, and the reference profile of the evaluated data.
"""
