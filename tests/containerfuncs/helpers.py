def greeting():
    return 'hello from a sibling module'
