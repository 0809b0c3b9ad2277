"""Records of a named logger, for tests: a handler on the logger itself, so that it sees the
records whatever the logger's propagation (Detectron2's setup_logger turns it off)."""
import logging


class Records(logging.Handler):
    """``with Records("protoseg") as records: ...`` -> ``records.messages``, the formatted
    messages of ``level`` and above."""

    def __init__(self, name: str, level: int = logging.INFO):
        super().__init__(level)
        self.logger, self.messages = logging.getLogger(name), []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self._level = self.logger.level
        self.logger.addHandler(self)
        if not self.logger.isEnabledFor(self.level):
            self.logger.setLevel(self.level)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def matching(self, text: str):
        return [m for m in self.messages if text in m]
