"""Reports what it sees (argv, cwd, __name__, sys.path[0]) and exits with a chosen code."""
import json
import os
import sys

print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "name": __name__,
                  "path0": sys.path[0], "ptdiag_on_path": any("inject" in p for p in sys.path)}))
sys.stdout.flush()
sys.stdout.buffer.write(b"raw bytes \xff\xfe not utf-8\n")
sys.stderr.write("to stderr\n")
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
