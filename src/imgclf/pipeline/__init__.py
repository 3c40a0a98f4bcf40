"""DVC and git plumbing: the stage runner every ``stages/*.py`` calls, stage deps derived
from imports, the lock check, the remote, git-at-a-revision helpers, and whether a
dataset is tracked.
"""
