# Run by every Python kernel the code interpreter starts (IPKernelApp.exec_files), in the
# user's namespace: so everything happens inside one function that deletes itself.
def _hutch_setup():
    import importlib.util
    import json
    import os

    import sys

    # The launcher held debugpy off during start-up (kernelspecs.LAUNCH); user code may
    # import it like any module.
    if sys.modules.get("debugpy", False) is None:
        del sys.modules["debugpy"]
    ip = get_ipython()  # noqa: F821 - defined in the kernel's namespace
    formatters = ip.display_formatter.formatters
    from IPython.core.formatters import BaseFormatter

    # The kernel spec says where the interpreter's chart reader is (this file's neighbour).
    path = os.environ.pop("HUTCH_CHARTS_MODULE", "")
    if not path:
        return
    spec = importlib.util.spec_from_file_location("_hutch_charts", path)
    charts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(charts)

    class JSONMime(BaseFormatter):
        # A formatter whose value travels as JSON in the message (not as text). It picks its
        # function by the object's class name rather than IPython's printer registry: the
        # inline matplotlib backend clears every Figure printer when it switches on.
        print_method = "_repr_json_"
        _return_type = (dict, list)
        functions = {}

        def __call__(self, obj):
            cls = type(obj)
            fn = self.functions.get((cls.__module__, cls.__name__))
            if fn is None:
                return None
            try:
                return fn(obj)
            except Exception:  # noqa: BLE001 - a description must never fail the cell
                return None

    def register(mime, module, name, func):
        if mime not in formatters:
            formatter = JSONMime(parent=ip.display_formatter)
            formatter.format_type = mime
            formatter.functions = {}
            formatters[mime] = formatter
            # The list of types to compute is fixed when IPython starts: add ours.
            active = ip.display_formatter.active_types
            if mime not in active:
                active.append(mime)
        formatters[mime].functions[(module, name)] = func

    def chart(figure):
        return charts.describe(figure)

    def data(frame, limit=10000):
        frame = frame.head(limit)
        return {str(c): json.loads(frame[c].to_json(orient="values", date_format="iso"))
                for c in frame.columns}

    register("e2b/chart", "matplotlib.figure", "Figure", chart)
    register("e2b/data", "pandas.core.frame", "DataFrame", data)
    register("e2b/data", "pandas", "DataFrame", data)    # pandas >= 3 names its home module


_hutch_setup()
del _hutch_setup
