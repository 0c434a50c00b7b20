import argparse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a small language model.")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="the peak learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per optimizer step")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    parser.add_argument("--warmup-steps", type=int, default=100, help="steps of linear warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per training sequence")
    parser.add_argument("--seed", type=int, default=0, help="the random seed")
    return parser.parse_args(argv)


def config_from_args(args):
    config = {}
    config["learning_rate"] = args.learning_rate
    config["batch_size"] = args.batch_size
    config["epochs"] = args.epochs
    config["warmup_steps"] = args.warmup_steps
    config["weight_decay"] = args.weight_decay
    config["max_length"] = args.max_length
    config["seed"] = args.seed
    return config


def log_config(logger, config):
    logger.info("learning_rate = %s", config["learning_rate"])
    logger.info("batch_size = %s", config["batch_size"])
