"""Framing: cutting a TCP byte stream into whole PDUs by their command_length.

Why this module: framing is the one part of the codec that holds state (a partial PDU between
reads) and the one that guards memory (an impossible command_length ends the stream), so it
stands apart from the stateless decode/encode. Sans-IO: bytes in, frames out.
"""

from __future__ import annotations

from collections.abc import Iterator

from bridge.smpp.spec import HEADER_SIZE, U32, PduError, Status


class FrameReader:
    """Cuts a TCP byte stream into whole PDUs.

    Holds at most one partial PDU (bounded by ``max_size``) once :meth:`frames` has run, so a
    client cannot make a connection's memory grow. An impossible command_length raises a fatal
    :class:`PduError` (ESME_RINVCMDLEN) carrying the sequence number when it could be read.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = 70_000) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def frames(self) -> Iterator[bytes]:
        """Yield every whole PDU now in the buffer.

        Each frame leaves the buffer before it is yielded, so a caller may stop iterating at
        any point (e.g. after unbind) and the rest stays buffered.
        """
        buf = self._buf
        while len(buf) >= 4:
            length = U32.unpack_from(buf)[0]
            if length < HEADER_SIZE or length > self.max_size:
                seq = U32.unpack_from(buf, 12)[0] if len(buf) >= HEADER_SIZE else 0
                cid = U32.unpack_from(buf, 4)[0] if len(buf) >= 8 else 0
                buf.clear()
                raise PduError(
                    Status.ESME_RINVCMDLEN,
                    f"impossible command_length {length}",
                    command_id=cid,
                    sequence_number=seq,
                    fatal=True,
                )
            have = len(buf)
            if have < length:
                return
            if have == length:  # the usual case: one read, one PDU; one copy
                frame = bytes(buf)
                buf.clear()
            else:
                frame = bytes(buf[:length])
                del buf[:length]  # O(1) at the front of a bytearray
            yield frame
