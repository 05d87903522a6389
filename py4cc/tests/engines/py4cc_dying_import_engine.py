"""An Engine module that, while the file named by $PY4CC_TEST_DIE_AT_IMPORT exists, kills
its process at import after writing its reason to fd 2, as an extension module that aborts
would: the worker never gets to report, and the reason exists only on its stderr."""

import os

_marker = os.environ.get("PY4CC_TEST_DIE_AT_IMPORT")
if _marker and os.path.exists(_marker):
    os.write(
        2,
        b"Traceback (most recent call last):\n"
        b'  File "py4cc_dying_import_engine.py", line 12, in <module>\n'
        b"ImportError: libmodelstore.so.3: cannot open shared object file\n",
    )
    os._exit(1)


class QuietEngine:
    def initialize(self, config, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        return int_feature, ""
