"""A script run on a real pseudo-terminal, as a person runs it: its stdout and stderr are the
terminal, which is its controlling terminal, so a Ctrl-C typed there (``\\x03``) is a SIGINT
from the terminal driver, not a signal sent by the test."""

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from typing import Optional

from conftest import REPO, TESTS


class Terminal:
    """``python script`` on a new pseudo-terminal of ``columns`` x ``rows``; everything it
    writes is collected in :attr:`output` (as text, the terminal's ``\\r\\n`` kept)."""

    def __init__(self, script: str, env: Optional[dict] = None, columns: int = 160, rows: int = 40,
                 cwd: Optional[str] = None):
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]), TERM="xterm")
        full_env.update(env or {})
        argv = [sys.executable, script]
        pid, fd = pty.fork()
        if pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                os.chdir(cwd or os.path.dirname(script))
                os.execve(argv[0], argv, full_env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._raw = b""
        self.status: Optional[int] = None

    @property
    def output(self) -> str:
        return self._raw.decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout`` seconds; False once the terminal is closed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            data = b""
        if not data:
            return False
        self._raw += data
        return True

    def expect(self, pattern: str, timeout: float = 30.0) -> "re.Match":
        """Wait until the output matches the regular expression ``pattern``; the match."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output)
            if found:
                return found
            left = deadline - time.monotonic()
            open_still = left > 0 and self._read(min(left, 1.0))
            if not open_still and not re.search(pattern, self.output):
                raise AssertionError("no {!r} on the terminal within {} s; it shows:\n{}".format(
                    pattern, timeout, self.output))

    def type(self, text: str) -> None:
        """Type on the keyboard (``\\x03`` is Ctrl-C)."""
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30.0) -> int:
        """Read until the script has exited and closed the terminal; its wait status."""
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("the script did not end within {} s; the terminal shows:\n{}".format(
                    timeout, self.output))
        _, self.status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return self.status

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

