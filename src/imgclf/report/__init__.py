"""Reports for people: the pull-request comment (model and dataset changes between two
revisions) and the markdown helpers it is written with.
"""
