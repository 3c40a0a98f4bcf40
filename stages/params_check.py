"""Stage params_check: validate the whole params.yaml, and that the dataset is tracked.

It depends on the entire file, so a misspelled key (``dvc exp run -S lr_rate=…``)
fails here even though no other stage declares that key. It also fails on a dataset
folder that a queued experiment or a CI clone would not have (see imgclf.pipeline.dataset_tracking):
that failure would otherwise come later, from DVC, as a bare ``[Errno 2]``.
"""

from imgclf.artifact.int8_policy import check_export
from imgclf.params import Params
from imgclf.pipeline.dataset_tracking import check_dataset_tracked
from imgclf.pipeline.stage import run_stage


def main(params: Params) -> None:
    check_export(params)
    notes = [check_dataset_tracked(params.data.dataset)]
    if params.model.weights:  # the same trap: a file only this workspace has
        notes.append(check_dataset_tracked(params.model.weights, key="model.weights"))
    for note in filter(None, notes):
        print(note)
    print("params.yaml is valid")


if __name__ == "__main__":
    run_stage("params_check", main)
