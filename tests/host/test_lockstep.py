"""Lockstep teardown: closing twice must not close descriptors that are no longer ours."""
import os

from edgegw.lockstep import Lockstep


class _Site:
    t = 0.0

    def step(self, dt):
        self.t += dt


def test_second_close_leaves_reused_descriptors_alone(tmp_path):
    ls = Lockstep(_Site(), 1, {}, str(tmp_path / "clock"), lambda: False).start()
    old = (ls.req, ls.grant)
    ls.close()
    # another gateway's files now have the same numbers (restart() closed this one first,
    # the fixture closes it again at teardown)
    r, w = os.pipe()
    for fd in old:
        os.dup2(r, fd)
    try:
        ls.close()
        for fd in old:
            os.fstat(fd)  # EBADF if the second close took it
    finally:
        for fd in set(old) | {r, w}:
            os.close(fd)
