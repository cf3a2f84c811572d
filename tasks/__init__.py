"""seqio registrations: importing this package registers every task and mixture."""

from tasks import pretraining  # noqa: F401
