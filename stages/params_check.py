"""Stage params_check: validate the whole params.yaml.

It depends on the entire file, so a misspelled key (``dvc exp run -S lr_rate=…``)
fails here even though no other stage declares that key.
"""

from imgclf.stage import run_stage

if __name__ == "__main__":
    run_stage("params_check", lambda params: print("params.yaml is valid"))
