"""Stage digits: write scikit-learn's digits as PNG files (the default dataset).

Usage: python stages/digits.py OUT_DIR
"""

import sys
from pathlib import Path

from imgclf.data.digits import write_digits

if __name__ == "__main__":
    count = write_digits(Path(sys.argv[1]))
    print(f"wrote {count} PNG files to {sys.argv[1]}")
