# Run by every Python kernel the code interpreter starts (IPKernelApp.exec_files), in the
# user's namespace: so everything happens inside one function that deletes itself.
def _hutch_setup():
    import importlib.util
    import json
    import os

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
        # A formatter whose value travels as JSON in the message (not as text).
        print_method = "_repr_json_"
        _return_type = (dict, list)

    def register(mime, module, name, func):
        if mime not in formatters:
            formatters[mime] = JSONMime(parent=ip.display_formatter)
            formatters[mime].format_type = mime
        # By name: nothing is imported now; the formatter applies once the user imports it.
        formatters[mime].for_type_by_name(module, name, func)

    def chart(figure):
        return charts.describe(figure)

    def data(frame, limit=10000):
        frame = frame.head(limit)
        return {str(c): json.loads(frame[c].to_json(orient="values", date_format="iso"))
                for c in frame.columns}

    register("e2b/chart", "matplotlib.figure", "Figure", chart)
    register("e2b/data", "pandas.core.frame", "DataFrame", data)


_hutch_setup()
del _hutch_setup
