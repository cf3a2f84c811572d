"""seqio registrations: importing this package registers every task and mixture."""

from tasks import pretraining  # noqa: F401
from tasks import knowledge_study  # noqa: F401
from tasks import pretraining_cached  # noqa: F401
from tasks import superglue  # noqa: F401
from tasks import superglue_zero_shot  # noqa: F401
