"""What the console shows of the libraries: each message once, and no notice that is not about the
user's run. Each fix is made where the message starts:

- Lightning gives its `lightning` logger a console handler of its own on import, and the messages
  also reach the root logger, where Hydra's console and file handlers print them again: the own
  handler goes, so each message prints once and still lands in the run's log file.
- Lightning advertises litlogger at every Trainer start (`rank_zero_info`): that line is dropped.
- Lightning 2.6 warns about its own use of a deprecated torch pytree API (`_pytree.py`): dropped.
- transformers reports the BERT pooler weights it did not load as UNEXPECTED, which reads like an
  error; the encoder leaves the pooler out on purpose (src/encoder.py), so a report that lists
  nothing but pooler weights is dropped. Any other load report still prints.
"""
import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

LITLOGGER_TIP = "litlogger"


class _DropMessages(logging.Filter):
    def __init__(self, keep) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        return self.keep(record.getMessage())


def _not_the_litlogger_tip(message: str) -> bool:
    return LITLOGGER_TIP not in message


def _not_only_the_pooler(message: str) -> bool:
    """False for a load report whose only finding is pooler weights left unloaded."""
    if "LOAD REPORT" not in message:
        return True
    findings = [line for line in message.splitlines() if "|" in line and "Status" not in line and "---" not in line]
    return not findings or not all(line.strip().startswith("pooler.") and "UNEXPECTED" in line for line in findings)


def tidy_library_logging() -> None:
    """Call once Lightning is imported, with the run's logging (Hydra's) in place."""
    if logging.getLogger().hasHandlers():
        lightning = logging.getLogger("lightning")
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in rank_zero.filters):
        rank_zero.addFilter(_DropMessages(_not_the_litlogger_tip))


@contextmanager
def pooler_report_dropped() -> Iterator[None]:
    """Around `AutoModel.from_pretrained(..., add_pooling_layer=False)`."""
    logger = logging.getLogger("transformers.modeling_utils")
    dropper = _DropMessages(_not_only_the_pooler)
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)
