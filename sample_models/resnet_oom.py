"""ResNet training that runs out of memory, or would; `--bug` picks the cause.

    python sample_models/resnet_oom.py --bug loss_graph    # the running loss keeps every step's graph
    python sample_models/resnet_oom.py --bug too_big -- with ptdiag -o memory.target=V100-16GB

bugs:
  loss_graph    `running_loss += loss` sums the loss tensor, not its value: each step's
                autograd graph stays chained to running_loss, memory grows every step
  outputs_list  the logits of every batch are kept in a list for an epoch-end accuracy,
                each with its autograd graph
  eval_no_grad  the evaluation after each epoch runs without torch.no_grad(): every
                forward records a graph and keeps activations for a backward that never comes
  too_big       the batch size is 16x the one asked for (a config copied from an 8-GPU
                job), far too large for the target device
"""

import torch
import torch.nn.functional as F

import _common

BUGS = ("loss_graph", "outputs_list", "eval_no_grad", "too_big")
TOO_BIG_FACTOR = 16


def evaluate(model, data, device, bug):
    model.eval()
    correct = 0
    if bug == "eval_no_grad":
        for images, labels in data:
            outputs = model(images.to(device))
            correct += (outputs.argmax(1) == labels.to(device)).sum().item()
    else:
        with torch.no_grad():
            for images, labels in data:
                outputs = model(images.to(device))
                correct += (outputs.argmax(1) == labels.to(device)).sum().item()
    model.train()
    return correct


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0], BUGS).parse_args()
    if args.bug == "too_big":
        args.batch_size *= TOO_BIG_FACTOR
    device = _common.setup(args)
    model = _common.resnet(args).to(device)
    optimizer = _common.sgd(args, model)
    data = _common.loader(args, _common.fake_data(args))
    for epoch in range(args.epochs):
        running_loss, seen = 0.0, []
        for images, labels in data:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            loss = F.cross_entropy(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if args.bug == "loss_graph":
                running_loss += loss
            else:
                running_loss += loss.item()
            if args.bug == "outputs_list":
                seen.append(outputs)
            else:
                seen.append(outputs.detach().argmax(1))
        correct = evaluate(model, data, device, args.bug)
        print(f"epoch {epoch}: loss {float(running_loss) / len(data):.4f} "
              f"eval accuracy {correct / len(data.dataset):.3f} ({len(seen)} batches kept)", flush=True)


if __name__ == "__main__":
    main()
