"""What runs without a cloud: the offline plan, the cost estimate, the stack-file reader,
the mock engine they share with the tests, and safe Markdown."""
