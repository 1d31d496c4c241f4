"""Pipeline stages (method.md S1-S7): each module holds a few pure functions and one `run(ctx)`."""
