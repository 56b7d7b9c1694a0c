# Overrides this script's module globals from the command line, the way nanoGPT's
# configurator does: `python train.py [config_file.py] [--key=value ...]`. It is exec'd
# into the training script's globals, so it reads and writes them directly.
import sys
from ast import literal_eval

for arg in sys.argv[1:]:
    if "=" not in arg:
        assert not arg.startswith("--"), f"expected --key=value, got {arg}"
        print(f"Overriding config with {arg}:")
        exec(open(arg).read())
    else:
        assert arg.startswith("--"), f"expected --key=value, got {arg}"
        key, val = arg[2:].split("=", 1)
        if key not in globals():
            raise ValueError(f"Unknown config key: {key}")
        try:
            attempt = literal_eval(val)
        except (SyntaxError, ValueError):
            attempt = val
        assert type(attempt) == type(globals()[key]), f"{key}: {type(attempt)} is not {type(globals()[key])}"
        print(f"Overriding: {key} = {attempt}")
        globals()[key] = attempt
