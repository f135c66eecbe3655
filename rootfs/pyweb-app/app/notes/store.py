"""Notes kept in memory, numbered from 1."""

import datetime
import threading


class Store:
    def __init__(self):
        self._lock = threading.Lock()
        self._notes = [{"id": 1, "text": "hello from the notes service", "at": "2023-01-01T00:00:00+00:00"}]

    def all(self) -> list[dict]:
        with self._lock:
            return list(self._notes)

    def add(self, text: str) -> dict:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a note needs some text")
        with self._lock:
            note = {"id": len(self._notes) + 1, "text": text.strip(),
                    "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            self._notes.append(note)
            return note
