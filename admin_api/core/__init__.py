"""Pure helpers of the admin service: job status rules and the audit hash chain. No FastAPI, SQLAlchemy or FLARE."""
