"""seqio registrations: importing this package registers every task and mixture."""

from ernie3_jax.tasks import pretraining  # noqa: F401
from ernie3_jax.tasks import knowledge_study  # noqa: F401
from ernie3_jax.tasks import pretraining_cached  # noqa: F401
from ernie3_jax.tasks import superglue  # noqa: F401
from ernie3_jax.tasks import superglue_zero_shot  # noqa: F401
