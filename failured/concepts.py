"""Concepts: one failure said in other words or in another language, as one more word for the model.

The learned fallback (model.py) reads n-grams, so "超时" and "timed out" share nothing, nor
"余额不足" and "insufficient balance": what it learns from an English message says nothing about
a Chinese one. Each concept below lists spellings of one idea in English and Chinese; a message
gets the concept's name as an extra word for each concept it mentions, so evidence learned in one
wording carries to the others. Measured (see the README): under grouped cross-validation the model
alone 87.5 -> 87.9 % and rules-blind 85.5 -> 86.3 %; on 807 messages of four collections from sources the
corpus lacked, the whole pipeline 66.2 -> 69.5 %.

English spellings match at a word start (so "throttl" covers throttled and throttling), in any case;
Chinese ones anywhere. One RE2 set over the message decides: linear in its length. Hyperscan, where
installed, gives the same answer in a third of the time (RE2 builds its DFA as it reads, and every new
message makes new states), for every text but the few RE2 alone can read; its database is read from the
cache directory (or compiled there the first time) in the background once a process, RE2 reading meanwhile.
"""

import functools
import hashlib
import os
import threading

import re2

from .rules import re2_options

try:  # an optional speed-up: the RE2 set gives the same answers
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform's wheels
    hyperscan = None

CONCEPTS = {
    'timeout': ('timeout', 'timed out', 'time out', '超时', '逾时'),
    'connect': ('connection', 'connect', '连接', '联接', '链接', '連線'),
    'refused': ('refused', '拒绝'),
    'reset': ('reset', '重置', '强迫关闭', '强制关闭'),
    'unreachable': ('unreachable', '不可达', '无法访问'),
    'dns': ('name resolution', 'resolve host', 'getaddrinfo', 'dns', '域名解析', '解析主机', '无法解析'),
    'notfound': ('not found', 'not exist', 'does not exist', 'no such', '不存在', '找不到', '未找到', '查无', '无此'),
    'balance': ('balance', 'funds', '余额', '资金'),
    'insufficient': ('insufficient', 'not enough', '不足', '不够'),
    'quota': ('quota', '额度', '配额', '限额'),
    'ratelimit': ('rate limit', 'too many requests', 'throttl', 'too frequent', '限流', '流控', '频繁', '频率', '超频', 'qps'),
    'busy': ('busy', 'overload', '繁忙', '忙碌', '过载', '拥挤'),
    'retrylater': ('try again later', 'retry later', '稍后重试', '稍后再试', '请重试'),
    'maintenance': ('maintenance', '维护', '升级中'),
    'signature': ('signature', '签名', '验签'),
    'key': ('api key', 'apikey', 'secret', 'access key', 'appkey', 'app key', '密钥', '秘钥', 'appsecret'),
    'token': ('token', '令牌'),
    'expired': ('expired', 'expire', '过期', '失效', '到期'),
    'invalid': ('invalid', 'illegal', '无效', '非法', '不合法'),
    'format': ('format', 'malformed', '格式'),
    'parse': ('parse', 'parsing', 'decode', '解析', '反序列化'),
    'param': ('parameter', 'param', 'argument', '参数'),
    'required': ('required', 'must not be empty', 'must not be null', 'cannot be empty', 'missing', '必填', '不能为空', '缺少', '缺失', '为空'),
    'duplicate': ('duplicate', 'already exist', 'already taken', 'already registered', '重复', '已存在', '已被使用', '已注册'),
    'permission': ('permission', 'forbidden', 'not allowed', 'access denied', '权限', '禁止', '不允许', '拒绝访问'),
    'unauthorized': ('unauthorized', 'unauthenticated', 'authentication', '未授权', '认证', '鉴权', '授权'),
    'login': ('login', 'log in', 'sign in', 'password', 'credential', '登录', '登陆', '密码', '凭证'),
    'account': ('account', '账号', '账户', '帐户', '帐号'),
    'frozen': ('frozen', 'suspended', 'locked', 'disabled', 'banned', '冻结', '锁定', '禁用', '停用', '封禁', '暂停'),
    'arrears': ('arrear', 'overdue', 'unpaid', '欠费', '逾期'),
    'stock': ('stock', 'inventory', '库存', '售罄'),
    'order': ('order', '订单'),
    'waybill': ('waybill', 'tracking number', '运单', '快递单'),
    'payment': ('payment', 'pay', '支付', '付款'),
    'refund': ('refund', '退款'),
    'memory': ('memory', 'oom', '内存'),
    'disk': ('disk', 'no space', '磁盘', '硬盘', '空间不足'),
    'file': ('file', '文件'),
    'path': ('path', 'directory', 'folder', '路径', '目录', '文件夹'),
    'database': ('database', 'sql', '数据库'),
    'network': ('network', 'socket', '网络'),
    'host': ('host', '主机', '服务器'),
    'port': ('port', '端口'),
    'certificate': ('certificate', 'cert', 'x509', 'ssl', 'tls', '证书'),
    'handshake': ('handshake', '握手'),
    'config': ('config', 'configuration', 'setting', '配置', '设置'),
    'unavailable': ('unavailable', '不可用', '暂停服务'),
    'internal': ('internal error', 'internal server error', 'server error', '内部错误', '系统错误', '系统异常', '服务器错误', '服务异常'),
    'unknown': ('unknown', '未知'),
    'nullptr': ('null pointer', 'nullpointer', 'nullreference', 'none type', 'nonetype', 'undefined', 'nil', '空指针', '未将对象引用'),
    'index': ('index out of', 'out of range', 'out of bounds', '越界'),
    'encoding': ('encoding', 'codec', 'utf-8', 'utf8', 'charset', '编码', '乱码', '字符集'),
    'exceed': ('exceed', 'over the limit', 'too large', 'too long', 'too big', 'limit', '超出', '超过', '超限', '上限', '过大', '过长'),
    'sensitive': ('sensitive', 'moderation', 'content policy', 'violat', 'inappropriate', '敏感', '违规', '审核', '违禁'),
    'blocked': ('blocked', 'blacklist', 'unsubscribed', '拉黑', '黑名单', '屏蔽', '退订'),
    'whitelist': ('whitelist', 'allowlist', '白名单'),
    'deadlock': ('deadlock', 'lock wait', '死锁', '锁等待'),
    'killed': ('killed', 'sigkill', '被杀死', '已杀死'),
    'crash': ('segmentation fault', 'sigsegv', 'core dumped', '段错误', '崩溃', '核心已转储'),
    'unsupported': ('not supported', 'unsupported', '不支持'),
    'notenabled': ('not enabled', 'not activated', 'not subscribed', '未开通', '未启用', '未激活', '未订阅'),
    'version': ('version', '版本'),
    'module': ('module', 'package', 'dependency', '模块', '依赖', '包'),
    'phone': ('phone', 'mobile', '手机', '电话'),
    'email': ('email', 'e-mail', 'mail', '邮箱', '邮件'),
    'mismatch': ('mismatch', 'does not match', 'not match', 'inconsistent', '不匹配', '不一致'),
    'incorrect': ('incorrect', 'wrong', '不正确', '错误的'),
    'disconnected': ('disconnect', 'closed', 'broken pipe', 'eof', '断开', '关闭', '中断'),
    'full': ('full', 'exhausted', '已满', '耗尽', '用尽', '用完'),
    'cancelled': ('cancelled', 'canceled', '已取消', '取消'),
    'status': ('status', 'state', '状态'),
    'region': ('region', 'zone', '地区', '区域', '地域'),
    'service': ('service', '服务'),
    'user': ('user', '用户'),
    'recipient': ('recipient', 'receiver', '收件人', '接收方'),
    'exists_not': ('no longer', 'deleted', 'removed', '已删除', '已下架', '已注销'),
    'type': ('type', '类型'),
    'cast': ('cast', 'conversion', 'convert', '转换'),
    'overflow': ('overflow', '溢出'),
    'queue': ('queue', '队列'),
    'upstream': ('upstream', 'gateway', '上游', '网关'),
    'proxy': ('proxy', '代理'),
}

_NAMES = tuple(CONCEPTS)
# RE2 folds case as Unicode's simple folding does: the Kelvin sign reads as "k" and the long s as "s" (no other
# character folds into a letter of the spellings, and no Chinese character of them folds at all). Hyperscan,
# reading bytes, folds ASCII letters only: a text holding either is RE2's to read.
_KELVIN_SIGN, _LONG_S = "\u212a", "\u017f"
# RE2's \b before an English spelling (each starts with a letter): the byte before is no ASCII word character,
# or there is none. Hyperscan compiles that byte class in a third of the time \b takes (some 80 ms), over the text
# after a space. Bytes past ASCII are no word characters for either engine.
_NOT_WORD = "[^0-9A-Za-z_]"
_local = threading.local()  # each thread's (database, scratch): a scratch serves one scan at a time
KEEP_DATABASES = 2  # compiled databases of older spellings (or another Hyperscan) are removed beyond this many


def _alternation(spellings):
    return "|".join(re2.escape(s) if not s.isascii() else r"\b" + re2.escape(s) for s in spellings)


@functools.lru_cache(maxsize=1)
def _compiled():
    concepts = re2._re2.Set(re2._re2.RE2.Anchor.UNANCHORED, re2_options())
    for name in _NAMES:
        concepts.Add(_alternation(CONCEPTS[name]).encode("utf-8"))
    concepts.Compile()
    return concepts


def _hyperscan_expression(spelling):
    """``spelling`` as Hyperscan reads it in byte mode, every byte escaped: Chinese ones are their UTF-8 bytes."""
    escaped = "".join(f"\\x{byte:02x}" for byte in spelling.encode("utf-8"))
    return (_NOT_WORD + escaped if spelling.isascii() else escaped).encode("ascii")


def _spellings_database():
    """Hyperscan's database of every spelling, each reporting its concept's index; None if Hyperscan refuses it."""
    ids = [index for index, name in enumerate(_NAMES) for _ in CONCEPTS[name]]
    expressions = [_hyperscan_expression(spelling) for name in _NAMES for spelling in CONCEPTS[name]]
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        database.compile(expressions=expressions, ids=ids, elements=len(ids),
                         flags=[hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH] * len(ids))
    except hyperscan.error:  # pragma: no cover - a Hyperscan that refuses plain literals: RE2 reads every text
        return None
    return database


class _Compiling:
    """Hyperscan's database of the spellings, read from the cache or compiled (some 80 ms of CPU; Hyperscan releases
    the GIL) once a process in a background thread while the RE2 set serves. ``database`` is set once, by that thread, and stays None
    without Hyperscan; ``_lock`` guards ``_started``."""

    def __init__(self):
        self.database = None
        self.ready = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self):
        """A child forked while the compiling thread ran has no such thread: it starts its own when asked."""
        if not self.ready.is_set():
            self.ready, self._started, self._lock = threading.Event(), False, threading.Lock()

    def start(self):
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        if hyperscan is None:
            self.ready.set()
        else:
            from . import modelcache  # here, not in the thread: modelcache imports the model, which imports this module

            threading.Thread(target=self._compile, args=(modelcache,), name="concepts-compile", daemon=True).start()

    def _compile(self, modelcache):
        try:
            self.database = _cached_database(modelcache)
        finally:
            self.ready.set()


def _cached_database(modelcache):
    """The spellings' database read from the cache directory (the model's), else compiled and kept there:
    compiling touches some 6 MB of Hyperscan's compiler and heap that a process reading it never holds."""
    directory = modelcache.cache_dir()
    path = None if directory is None else directory / f"concepts-{_cache_key()}.hs"
    if path is not None and path.exists():
        try:
            database = hyperscan.loadb(path.read_bytes(), hyperscan.HS_MODE_BLOCK)
            modelcache.touch(path)
            return database
        except (OSError, hyperscan.error):  # unreadable, or another platform's: compiled again
            pass
    database = _spellings_database()
    if database is not None and path is not None:
        try:
            modelcache.write_cache_file(path, hyperscan.dumpb(database), "concepts-*.hs", KEEP_DATABASES)
        except OSError:  # a read-only cache: this process compiled it, the next one will too
            pass
    return database


def _cache_key():
    digest = hashlib.sha256(f"{hyperscan.__version__}".encode())
    for index, name in enumerate(_NAMES):
        for spelling in CONCEPTS[name]:
            digest.update(b"%d " % index + _hyperscan_expression(spelling) + b"\0")
    return digest.hexdigest()[:24]


_HYPERSCAN = _Compiling()


def wait_ready(timeout=None):
    """Block until Hyperscan reads what it can (or it is known that RE2 alone will read); True when so."""
    _HYPERSCAN.start()
    return _HYPERSCAN.ready.wait(timeout)


def concepts_in(text):
    """The names of the concepts ``text`` mentions, in CONCEPTS' order."""
    database = _HYPERSCAN.database
    if database is None:
        _HYPERSCAN.start()
        return concepts_in_re2(text)
    if _KELVIN_SIGN in text or _LONG_S in text:
        return concepts_in_re2(text)
    found = set()
    try:
        database.scan(b" " + text.encode("utf-8", "replace"), match_event_handler=_collect, context=found,
                      scratch=_scratch(database))
    except hyperscan.error:  # never seen; the RE2 set gives the same answer
        return concepts_in_re2(text)
    return [_NAMES[i] for i in sorted(found)]


def concepts_in_re2(text):
    """``concepts_in`` read by the RE2 set alone, whatever is installed (the tests compare the two)."""
    return [_NAMES[i] for i in sorted(_compiled().Match(text.encode("utf-8", "replace")))]


def _scratch(database):
    local = getattr(_local, "scratch", None)
    if local is None or local[0] is not database:
        local = _local.scratch = (database, hyperscan.Scratch(database))
    return local[1]


def _collect(index, start, end, flags, found):
    found.add(index)
