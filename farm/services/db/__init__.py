"""The farm's database: models, migrations, and the job operations everyone shares.

from farm.services.db import open_database, repo

db = open_database(settings.effective_database_url)   # migrates to the current schema
video = repo.create_video(db, name=..., key=..., size=..., ...)
job = repo.create_job(db, video.id, config.to_payload())
print(repo.to_job(job).to_json())
"""

from farm.domain.job import isoformat
from farm.services.db import repo
from farm.services.db.engine import Database, DatabaseError, alembic_config, error_line, is_unreachable, open_database
from farm.services.db.models import Job, Video, new_id, utcnow
from farm.services.db.repo import PROBE_FIELDS

__all__ = [
    "error_line",
    "Database",
    "DatabaseError",
    "Job",
    "PROBE_FIELDS",
    "Video",
    "alembic_config",
    "is_unreachable",
    "isoformat",
    "new_id",
    "open_database",
    "repo",
    "utcnow",
]
