"""Protocol adapters: each subpackage turns one wire protocol into calls on the broker core."""
