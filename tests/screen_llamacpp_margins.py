"""Screen a fixed pool of prompts by llama.cpp's own greedy margins on the default model.

For each prompt: the smallest top-2 logit gap over llama.cpp's 32 greedy tokens (the same
settings as the `llamacpp_default` fixture in test_llamacpp_parity.py), the step it occurs at,
and whether llama.cpp with flash attention produces the same 32 tokens. Then the first 10
prompts, in pool order, whose gap reaches the threshold. Nothing here runs our runtime, so a
selection made from this output cannot be tuned to our results.

    python tests/screen_llamacpp_margins.py [threshold]    # threshold defaults to 0.5
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from llamacpp_oracle import llama_cpp_reference  # noqa: E402
from test_llamacpp_parity import N_TOKENS, first_difference, llamacpp_greedy  # noqa: E402

# Prompts 0-39 were written and screened first; 40-118 were written, before being screened,
# when none of the first 40 reached 0.5. Pool order is the order they were written in.
POOL = [
    'The Eiffel Tower was built for',
    'Photosynthesis is the process by which plants',
    'The Great Wall of China is',
    'The human heart has four chambers:',
    'Mount Everest is the highest mountain in the world, located',
    'The French Revolution began in 1789 when',
    'Shakespeare wrote many famous plays, including',
    'The speed of light in a vacuum is',
    'The moon orbits the Earth about once every',
    'Albert Einstein is best known for',
    'It was a dark and stormy night, and the old lighthouse keeper',
    'The little robot woke up in an empty warehouse and',
    'Long ago, a young dragon who was afraid of fire',
    'She opened the letter with shaking hands. It said',
    'The detective looked at the muddy footprints and said,',
    'def is_prime(n):\n',
    'import json\n\ndef load_config(path):\n',
    '# Sort a list of numbers in Python\nnumbers = [5, 2, 9, 1]\n',
    'SELECT name, email FROM users WHERE',
    '<!DOCTYPE html>\n<html>\n<head>\n',
    'A shopping list for a picnic:\n1.',
    'Three tips for staying healthy:\n1.',
    'Things to pack for a camping trip:\n-',
    'The planets of the solar system, in order from the Sun, are',
    'Here are five popular programming languages:',
    'Q: What is the chemical symbol for gold?\nA:',
    'Q: Who painted the Mona Lisa?\nA:',
    'Q: How many continents are there?\nA:',
    'Question: Why is the sky blue?\nAnswer:',
    'Q: What does a thermometer measure?\nA:',
    'Write a short poem about the ocean.\n\n',
    'Explain how a bicycle works in simple terms.\n\n',
    'Translate to French: Good morning, how are you?\n',
    'Summarize the plot of Romeo and Juliet in one sentence.\n\n',
    'Give me a recipe for a simple tomato soup.\n\n',
    'Dear Sir or Madam,\n\nI am writing to',
    'The best way to learn a new language is',
    'Electric cars are becoming more popular because',
    'The weather forecast for tomorrow says',
    'My dog loves to',
    'The Amazon River flows through',
    'Water is made of two hydrogen atoms and',
    'The Pacific Ocean is the largest',
    'DNA stands for',
    'The Statue of Liberty was a gift from',
    'Isaac Newton discovered the law of',
    'The first man to walk on the Moon was',
    'The Roman Empire was founded in',
    'Honey bees live in colonies with one queen,',
    'The capital of Japan is',
    'The old man sat on the bench and fed the pigeons. Every morning',
    'When the spaceship landed in the cornfield, the farmer',
    'Tom had never seen snow before. When he stepped outside',
    'The princess looked out of the tower window and saw',
    'On the first day of school, Maria was nervous because',
    'The cat knocked the glass off the table and',
    'Deep in the forest there lived a wise old owl who',
    'The train was late again, so Sarah decided to',
    '#include <stdio.h>\n\nint main(void) {\n',
    'def add(a, b):\n    """Return the sum of a and b."""\n',
    'class Point:\n    def __init__(self, x, y):\n',
    'for i in range(10):\n',
    'function greet(name) {\n',
    'public class HelloWorld {\n    public static void main(String[] args) {\n',
    'import numpy as np\n\nx = np.array([1, 2, 3])\n',
    'git commit -m',
    '#!/bin/bash\n# Back up the home directory\n',
    'if __name__ == "__main__":\n',
    'The days of the week are',
    'The ingredients for a chocolate cake are:',
    'Common symptoms of the flu include',
    'Here is a list of fruits:\n- Apple\n- Banana\n-',
    'The four seasons of the year are',
    'Popular tourist attractions in London include',
    'Steps to change a flat tire:\n1.',
    'Q: What is the boiling point of water in Fahrenheit?\nA:',
    'Q: What is the capital of Italy?\nA:',
    'Q: How many legs does a spider have?\nA:',
    'Q: What gas do plants absorb from the air?\nA:',
    'Q: Who wrote Pride and Prejudice?\nA:',
    'Q: What is the square root of 81?\nA:',
    'Q: What language is spoken in Brazil?\nA:',
    'Question: What is the tallest animal in the world?\nAnswer:',
    'Write a haiku about autumn.\n\n',
    'List three benefits of regular exercise.\n\n',
    'Describe the water cycle.\n\n',
    'Write an email to your manager asking for a day off.\n\n',
    'Explain what a computer virus is.\n\n',
    'Give three reasons to read more books.\n\n',
    'Write a product description for a coffee mug.\n\n',
    'Tell me a joke about computers.\n\n',
    'I went to the supermarket to buy',
    'The most important thing in a friendship is',
    'Our team meeting is scheduled for',
    'Thank you for your order! Your package will',
    'Welcome to our hotel. Breakfast is served',
    'The museum is open from',
    'Four score and seven years ago',
    'To be, or not to be,',
    'We hold these truths to be self-evident,',
    'Twinkle, twinkle, little star,',
    'The quick brown fox',
    'Lorem ipsum dolor sit amet,',
    'Permission is hereby granted, free of charge, to any person obtaining a copy',
    'It was the best of times, it was the worst of times,',
    'In the beginning God created',
    'Humpty Dumpty sat on a wall,',
    'Mary had a little lamb,',
    'Happy birthday to you,',
    'I have a dream that one day',
    'Ask not what your country can do for you,',
    'Gravity is the force that',
    'A volcano erupts when',
    'To plant a tree, you should',
    'The internet works by',
    'Vaccines help the body',
    'A rainbow appears when',
    'The stock market is',
    'Recycling is important because',
]


def screen(threshold: float) -> None:
    from edgellm.runtime.default_model import default_model_path

    path = default_model_path(progress=False)
    plain = llama_cpp_reference(path, n_ctx=1024, n_threads=2, n_batch=512, logits_all=True)
    flash = llama_cpp_reference(path, n_ctx=1024, n_threads=2, n_batch=512, logits_all=True,
                                flash_attn=True)
    selected, flash_agreed = [], 0
    print(f"{'#':>3} {'min gap':>8} {'at':>3}  flash vs not  prompt -> llama.cpp continuation")
    for number, prompt in enumerate(POOL):
        ids = plain.tokenize(prompt.encode(), add_bos=True, special=False)
        tokens, top2 = llamacpp_greedy(plain, ids, N_TOKENS)
        flash_tokens, _ = llamacpp_greedy(flash, ids, N_TOKENS)
        gaps = [first - second for first, second in top2]
        at = min(range(N_TOKENS), key=gaps.__getitem__)
        flash_at = first_difference(flash_tokens, tokens)
        flash_agreed += flash_at is None
        if gaps[at] >= threshold and len(selected) < 10:
            selected.append((prompt, gaps[at]))
        text = plain.detokenize(tokens).decode(errors="replace")
        print(f"{number:3d} {gaps[at]:8.4f} {at:3d}  "
              f"{'identical' if flash_at is None else f'token {flash_at}':>12}  {prompt!r} -> {text!r}",
              flush=True)
    print(f"\nllama.cpp with vs without flash attention: {flash_agreed}/{len(POOL)} identical")
    print(f"first {len(selected)} prompts with min gap >= {threshold} (10 wanted):")
    for prompt, gap in selected:
        print(f"    {prompt!r},  # llama.cpp min top-2 gap {gap:.4f}")


if __name__ == "__main__":
    screen(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
