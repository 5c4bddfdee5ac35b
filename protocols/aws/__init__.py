"""The AWS HTTP listener shared by the SQS and SNS APIs: SigV4, both wire formats, errors."""
