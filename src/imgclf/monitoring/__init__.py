"""Served traffic: the recorder the API writes to (SQLite), the read side, labelling
samples for the next dataset, and the drift report. The drift report's libraries are an
optional extra (``pip install -e '.[monitor]'``), never in the serving image.
"""
