"""The Amazon SQS API on Moorage's queues (served by the AWS listener, `protocols.aws`)."""
