"""TC (clsact) attachments for packet capture, through netlink (pyroute2).

The classifier only watches (it returns TC_ACT_OK). A clsact qdisc we created is removed
again on detach; one that was already there (another tool's) is left, with only our
filter taken off it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ecapture.errors import AttachError

# tc's parent handles of the clsact hooks
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
PRIO = 49151  # a priority of our own, so detaching touches no other filter


class TcAttachments:
    def __init__(self) -> None:
        self._ipr: Any = None
        self._created: set[int] = set()  # ifindex of clsact qdiscs we added
        self._filters: list[tuple[int, str]] = []  # (ifindex, hook)

    def attach(self, ifname: str, hook: str, fd: int, name: str) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        if self._ipr is None:
            self._ipr = IPRoute()
        links = self._ipr.link_lookup(ifname=ifname)
        if not links:
            raise AttachError(f"no network interface {ifname}")
        idx = links[0]
        if idx not in self._created:
            try:
                self._ipr.tc("add", "clsact", idx)
                self._created.add(idx)
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: someone else's clsact, share it
                    raise AttachError(f"adding clsact to {ifname} failed: {e}") from None
        try:
            self._ipr.tc("add-filter", "bpf", idx, ":1", fd=fd, name=name,
                         parent=PARENTS[hook], classid=1, direct_action=True, prio=PRIO)
        except NetlinkError as e:
            raise AttachError(f"attaching the TC classifier to {ifname} {hook} failed: "
                              f"{e}") from None
        self._filters.append((idx, hook))

    def detach_all(self) -> None:
        if self._ipr is None:
            return
        from pyroute2.netlink.exceptions import NetlinkError

        for idx, hook in self._filters:
            if idx in self._created:
                continue  # removing the qdisc below removes its filters
            with contextlib.suppress(NetlinkError):  # gone with its interface
                self._ipr.tc("del-filter", "bpf", idx, ":1", parent=PARENTS[hook], prio=PRIO)
        for idx in self._created:
            with contextlib.suppress(NetlinkError):
                self._ipr.tc("del", "clsact", idx)
        self._filters.clear()
        self._created.clear()
        self._ipr.close()
        self._ipr = None
