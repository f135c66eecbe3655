"""Errors that tailor reports to the user as one clear line, and the one class for tailor's own bugs.

Code that must tell failures apart branches on these classes (``isinstance``),
never on a message's text:

* :class:`TailorError`: a problem the user can fix (the base of all below);
* :class:`QemuError`: qemu could not be started; :class:`HostPortTaken`:
  qemu could not forward a host port (another process took it first);
* :class:`BootFailure` and its kinds (:class:`QemuExited`,
  :class:`KernelPanicked`, :class:`NoConsoleOutput`, :class:`BootTimeout`,
  :class:`ProbeFailed`): why a boot test failed;
* :class:`TailorBug`: tailor contradicted itself (not a :class:`TailorError`:
  nothing catches it as the user's problem, and its traceback is kept).
"""


class TailorError(Exception):
    """A problem the user can fix; str(err) is a single line naming the file, key or symbol and what to do."""


class QemuError(TailorError):
    """qemu could not be started (not installed, not executable)."""


class HostPortTaken(QemuError):
    """qemu could not forward a host port to the guest: another process bound it after it was picked."""


class BootFailure(TailorError):
    """A boot test failed; str() is the reason (without the ``boot test of <app> failed:`` prefix)."""


class QemuExited(BootFailure):
    """qemu ended (or was killed) before the boot test was decided."""


class KernelPanicked(BootFailure):
    """The guest kernel panicked before the boot test was decided."""


class NoConsoleOutput(BootFailure):
    """The guest printed nothing at all on its console in time (taken to be hung)."""


class BootTimeout(BootFailure):
    """The test timeout passed before init, the ready pattern or the console probe's pattern came."""


class ProbeFailed(BootFailure):
    """A probe gave up; str() is the detail (without the ``<type> probe:`` prefix).

    When nothing answered properly before the deadline, ``last`` holds the
    last error seen (and str() says how long the probe tried).
    """

    def __init__(self, detail: str, last: str | None = None):
        super().__init__(detail)
        self.last = last


class TailorBug(Exception):
    """tailor contradicted itself (e.g. kbuild and tailor's Kconfig engine disagree); never the user's fault.

    str() says that it is a bug in tailor and asks for a report; the task
    layer prints it with its traceback.
    """

    def __init__(self, detail: str):
        super().__init__(f"{detail}; this is a bug in tailor, please report it")
