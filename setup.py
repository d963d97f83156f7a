"""Everything is in setup.cfg but the C extension, which setup.cfg cannot declare.

``failured._speedups`` (compiled copies of the classifier's hottest Python: the
fingerprint's passes, the code extractors, the identifier speller, the frame filter and
the model's features and sums) is optional: where no C compiler or Python headers are
found, the install goes on without it and the same Python code runs (tests/test_speedups.py,
test_codes_native.py and test_fingerprint.py compare each compiled function with it).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "failured/_speedups.c"
# The build records its source's hash: failured/speedups.py leaves a build of another source unused.
SOURCE_SHA256 = hashlib.sha256(Path(__file__).resolve().parent.joinpath(SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("failured._speedups", sources=[SOURCE], optional=True,
                             define_macros=[("SOURCE_SHA256", f'"{SOURCE_SHA256}"')])])
