"""Business logic of the admin service; routes call these functions and never touch the ORM directly."""
