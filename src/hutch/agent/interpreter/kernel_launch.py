# The Python kernel's main script (kernelspecs.LAUNCH executes it, in the kernel's own process,
# on the template's Python, after importing ipykernel): ipykernel's own kernel, with a cost that
# buys the interpreter nothing turned off before it starts. The change first checks that
# ipykernel still has the shape it expects and otherwise leaves it as it is, so another
# ipykernel version runs unchanged rather than broken. It all happens inside a function, so
# the kernel's __main__ gets no names of ours but that one.
def _hutch_launch():
    from ipykernel.kernelapp import IPKernelApp

    # Subshells (ipykernel 7) put a thread of their own in front of the shell channel: each
    # request is received there and handed to the main thread over an in-process socket, and
    # its reply handed back, two thread switches per request. No client of the interpreter
    # asks for a subshell, and without the thread the kernel reads the shell channel on its
    # main thread, as ipykernel 6 did (the kernel reports no "kernel subshells" feature then).
    init_control = getattr(IPKernelApp, "init_control", None)
    if init_control is not None and hasattr(IPKernelApp, "shell_channel_thread"):
        def init_control_without_subshells(self, context):
            init_control(self, context)
            self.shell_channel_thread = None
        IPKernelApp.init_control = init_control_without_subshells

    IPKernelApp.launch_instance()


_hutch_launch()
