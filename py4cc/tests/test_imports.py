"""Item 4 of issue 16: workers started through py4cc's forkserver run the py4cc their host
imported, whatever the working directory or ``PYTHONPATH`` hold."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST_SCRIPT = textwrap.dedent("""
    import sys


    def main(root, start_method):
        sys.path.insert(0, root)  # the real py4cc, ahead of everything
        import py4cc
        from py4cc.driver import Driver
        from py4cc.engine import big_model

        d = Driver(n_subprocesses=1, start_method=start_method).initialize("{}", ["a", "b"], ["c", "d", "e"])
        flag, key, message = d.submit([1.5, -2.0], ["ab", "c", "d"], 7)
        answer = d.wait(key, 30)
        d.finalize()
        right = answer[1] == big_model([1.5, -2.0], ["ab", "c", "d"], 7)
        print("answer", answer[0], right, py4cc.__file__.startswith(root))


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
""")

IMPOSTOR = textwrap.dedent("""
    import os
    open(os.path.join(os.path.dirname(__file__), "imported-" + str(os.getpid())), "w").close()
""")


class EmbeddedPackageTest(unittest.TestCase):
    """Before: the forkserver imported the first ``py4cc`` its own ``sys.path`` led to (its
    working directory comes first, then ``PYTHONPATH``), preloading its lifeline from it and
    forking every worker with that package imported: from a directory holding another
    ``py4cc/``, ``initialize`` failed ("exited before its engine ... was ready")."""

    def run_host(self, start_method: str, cwd: str, pythonpath: str | None) -> str:
        with tempfile.TemporaryDirectory() as script_dir:
            script = os.path.join(script_dir, "host.py")
            with open(script, "w") as handle:
                handle.write(HOST_SCRIPT)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            if pythonpath is not None:
                env["PYTHONPATH"] = pythonpath
            done = subprocess.run(
                [sys.executable, script, REPO_ROOT, start_method],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.strip()

    def impostor(self) -> str:
        """A directory holding a ``py4cc/`` package that leaves a file when imported."""
        parent = tempfile.mkdtemp(prefix="py4cc-impostor-")
        self.addCleanup(subprocess.run, ["rm", "-rf", parent], check=False)
        os.mkdir(os.path.join(parent, "py4cc"))
        with open(os.path.join(parent, "py4cc", "__init__.py"), "w") as handle:
            handle.write(IMPOSTOR)
        return parent

    def imports_of(self, parent: str) -> list[str]:
        return [name for name in os.listdir(os.path.join(parent, "py4cc")) if name.startswith("imported-")]

    def test_a_py4cc_in_the_working_directory_is_not_imported(self):
        for method in ("forkserver", "spawn", "fork"):
            with self.subTest(start_method=method):
                parent = self.impostor()
                self.assertEqual(self.run_host(method, cwd=parent, pythonpath=None), "answer 0 True True")
                self.assertEqual(self.imports_of(parent), [])

    def test_a_py4cc_on_pythonpath_is_not_imported(self):
        for method in ("forkserver", "spawn", "fork"):
            with self.subTest(start_method=method):
                parent = self.impostor()
                self.assertEqual(self.run_host(method, cwd="/", pythonpath=parent), "answer 0 True True")
                self.assertEqual(self.imports_of(parent), [])


if __name__ == "__main__":
    unittest.main()
