//! The dashboard's two catalogues, zh-CN (the default) and English, and the locale's number formatting.
//! A test checks that both catalogues have the same keys.

/// A language the dashboard speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    ZhCn,
    En,
}

impl Lang {
    /// From a `lang` cookie or query value; zh-CN for anything else.
    pub fn parse(s: &str) -> Lang {
        match s {
            "en" => Lang::En,
            _ => Lang::ZhCn,
        }
    }

    /// The value of the `lang` attribute and of the cookie.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::ZhCn => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The other language (the switch offers it).
    pub fn other(self) -> Lang {
        match self {
            Lang::ZhCn => Lang::En,
            Lang::En => Lang::ZhCn,
        }
    }

    fn catalogue(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::ZhCn => ZH_CN,
            Lang::En => EN,
        }
    }

    /// The text of `key`; the key itself when missing (a test keeps that from happening).
    pub fn t(self, key: &str) -> &'static str {
        self.catalogue()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| {
                Lang::En
                    .catalogue()
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or("?", |(_, v)| *v)
            })
    }

    /// An integer with thousands separators (both locales group by three with a comma).
    pub fn int(self, n: i64) -> String {
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    }

    /// A China Standard Time instant given as `YYYY-MM-DD HH:MM:SS`, written for the locale:
    /// `2026年11月20日 16:00:01` or `20 Nov 2026, 16:00:01`. Anything else is returned as it is.
    pub fn cst(self, t: &str) -> String {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let parsed = (|| {
            let (date, clock) = t.split_once(' ')?;
            let mut d = date.split('-');
            let (y, m, day) = (d.next()?, d.next()?, d.next()?);
            let (m, day): (usize, u32) = (m.parse().ok()?, day.parse().ok()?);
            (clock.len() == 8 && (1..=12).contains(&m)).then_some((y, m, day, clock))
        })();
        match (self, parsed) {
            (_, None) => t.to_owned(),
            (Lang::ZhCn, Some((y, m, d, clock))) => format!("{y}年{m}月{d}日 {clock}"),
            (Lang::En, Some((y, m, d, clock))) => format!("{d} {} {y}, {clock}", MONTHS[m - 1]),
        }
    }

    /// A duration of `s` seconds in words, its two largest units: `31 天 1 小时`, `2 hours 5 minutes`,
    /// `45 seconds`.
    pub fn duration(self, s: i64) -> String {
        let s = s.max(0);
        let parts = [
            (s / 86_400, "unit_day", "unit_days"),
            (s % 86_400 / 3_600, "unit_hour", "unit_hours"),
            (s % 3_600 / 60, "unit_minute", "unit_minutes"),
            (s % 60, "unit_second", "unit_seconds"),
        ];
        let words: Vec<String> = parts
            .iter()
            .skip_while(|(n, _, _)| *n == 0)
            .take(2)
            .filter(|(n, _, _)| *n > 0)
            .map(|(n, one, many)| {
                self.t(if *n == 1 { one } else { many })
                    .replace("{n}", &self.int(*n))
            })
            .collect();
        if words.is_empty() {
            self.t("unit_seconds").replace("{n}", "0")
        } else {
            words.join(" ")
        }
    }

    /// A number with one decimal and thousands separators.
    pub fn dec1(self, x: f64) -> String {
        let tenths = (x * 10.0).round() as i64;
        let sign = if tenths < 0 { "-" } else { "" };
        let tenths = tenths.abs();
        format!("{sign}{}.{}", self.int(tenths / 10), tenths % 10)
    }
}

const ZH_CN: &[(&str, &str)] = &[
    ("search", "搜索"),
    ("search_words", "关键词"),
    ("no_hits", "没有找到。"),
    ("hits", "搜索结果"),
    ("kind_doc_anomaly", "告警"),
    ("kind_doc_manifest", "联单"),
    ("kind_doc_note", "检查记录"),
    ("search_unavailable", "搜索暂时不可用，请稍后重试。"),
    ("manifest_status", "联单状态"),
    ("status_opened", "已开具"),
    ("status_dispatched", "已发运"),
    ("status_received", "已接收"),
    ("generator", "产生单位"),
    ("receiver", "接收单位"),
    ("declared_kg", "申报重量（千克）"),
    ("dispatched_kg", "发运重量（千克）"),
    ("received_kg", "接收重量（千克）"),
    ("opened_at", "开具时间（北京时间）"),
    ("dispatched_at", "发运时间（北京时间）"),
    ("received_at", "接收时间（北京时间）"),
    ("notes", "备注"),
    ("manifest_containers", "联单中的容器"),
    ("range", "时间范围"),
    ("range_day", "1 天"),
    ("range_week", "7 天"),
    ("range_month", "30 天"),
    ("weights_chart", "重量曲线"),
    ("no_readings", "这段时间没有读数。"),
    ("no_readings_ever", "这个终端还没有任何读数。"),
    ("last_reading", "最近一次读数在 {at}（{ago}）。"),
    ("show_last", "查看截至 {day} 的 {range}"),
    (
        "range_moved",
        "最近 {range}没有读数，这里显示截至最近一次读数那天的 {range}：{last}",
    ),
    ("today", "今天"),
    ("day_ago", "1 天前"),
    ("days_ago", "{n} 天前"),
    ("no_kpis", "这 7 天没有任何指标记录。"),
    ("as_table", "以表格查看"),
    ("chart_legend", "曲线图例"),
    (
        "thinned",
        "共 {n} 个读数，按屏幕宽度保留每段的最大和最小值后显示 {m} 个点。",
    ),
    (
        "readings_unavailable",
        "时序数据库暂时无法访问，曲线无法显示。",
    ),
    ("profile", "基本信息"),
    ("storage_capacity_kg", "贮存能力（千克）"),
    ("none", "暂无。"),
    ("terminal", "终端"),
    ("terminal_kind", "终端类型"),
    ("online", "在线"),
    ("offline", "离线"),
    ("last_measured", "最近测量（北京时间）"),
    ("readings", "读数"),
    ("inventory", "在库容器"),
    ("container", "容器"),
    ("waste_code", "废物代码"),
    ("stage", "环节"),
    ("last_weight_kg", "最近重量（千克）"),
    ("kpis", "近 7 日指标"),
    ("day", "日期"),
    ("weighed_kg", "称重量（千克）"),
    ("storage_in_kg", "入库（千克）"),
    ("storage_out_kg", "出库（千克）"),
    ("custody_chain", "流转记录"),
    (
        "custody_help",
        "这个容器每一次称重的环节、终端和重量，按测量时间排列；指纹是日志中该读数的 SHA-256。",
    ),
    ("measured_at", "测量时间（北京时间）"),
    ("weight_kg", "重量（千克）"),
    ("manifest", "联单"),
    ("event_seq", "日志序号"),
    ("fingerprint", "指纹（SHA-256）"),
    ("main_nav", "主导航"),
    ("alarms", "告警"),
    ("alarms_open", "未处理的告警"),
    ("live_alarms", "新告警（实时）"),
    ("alarms_all", "全部告警"),
    ("show_all", "显示全部"),
    ("show_open", "只看未处理"),
    ("no_alarms", "没有告警。"),
    ("detected_at", "发现时间（北京时间）"),
    ("severity", "严重程度"),
    ("severity_high", "高"),
    ("severity_medium", "中"),
    ("severity_low", "低"),
    ("subject", "对象"),
    ("description", "说明"),
    ("state", "状态"),
    ("state_open", "未处理"),
    ("state_acknowledged", "已确认"),
    ("state_resolved", "已解决"),
    ("handled", "处理记录"),
    ("by", "处理人"),
    ("at", "时间"),
    ("actions", "操作"),
    ("note", "处理说明"),
    ("acknowledge", "确认"),
    ("resolve", "解决"),
    ("note_required", "请填写处理说明（1 至 4000 字）。"),
    ("app_name", "危险废物智能监管平台"),
    ("skip_to_main", "跳到主要内容"),
    ("breadcrumb", "位置"),
    ("national", "全国"),
    ("sign_in", "登录"),
    ("sign_in_title", "监管人员登录"),
    (
        "sign_in_help",
        "请输入监管部门签发的访问令牌。令牌保存在仅限本站的会话 Cookie 中，关闭浏览器即失效。",
    ),
    ("token", "访问令牌"),
    ("sign_out", "退出登录"),
    ("bad_token", "令牌无效、已过期或已被吊销。"),
    ("signed_in_as", "当前身份"),
    ("tier_admin", "平台管理员"),
    ("tier_national", "全国监管"),
    ("tier_province", "省级监管"),
    ("tier_enterprise", "企业"),
    ("overview", "总览"),
    ("summary", "监管概况"),
    ("enterprises", "企业数"),
    ("terminals", "终端数"),
    ("terminals_online", "在线终端"),
    ("kg_in_storage", "贮存量（千克）"),
    ("open_alarms", "未处理告警"),
    ("open_alarms_by_kind", "未处理告警（按类型）"),
    ("kind", "类型"),
    ("count", "数量"),
    ("no_open_alarms", "没有未处理的告警。"),
    ("provinces", "各省情况"),
    (
        "provinces_help",
        "每个省一格：企业数与未处理告警数。点击进入该省。",
    ),
    ("province", "省份"),
    ("status_ok", "正常"),
    ("status_alarm", "有告警"),
    ("enterprise", "企业"),
    ("enterprise_id", "企业编号"),
    ("name", "名称"),
    ("city", "城市代码"),
    ("province_enterprises", "本省企业"),
    ("not_found_title", "页面不存在"),
    ("not_found", "找不到这个页面，或者您无权查看。"),
    ("forbidden_title", "请求被拒绝"),
    ("forbidden", "这个请求来自其他站点，已被拒绝。"),
    ("unavailable_title", "暂时无法访问"),
    ("unavailable", "业务数据库暂时无法访问，请稍后重试。"),
    ("back_to_overview", "返回总览"),
    ("language", "语言"),
    ("switch_language", "English"),
    ("kind_weight_fluctuation", "重量异常波动"),
    ("kind_terminal_silent", "终端离线"),
    ("kind_storage_overdue", "超期贮存"),
    ("kind_over_capacity", "超出贮存能力"),
    ("kind_tamper_suspected", "疑似篡改"),
    ("kind_manifest_weight_mismatch", "联单重量不符"),
    ("desc_container", "容器 {id}"),
    ("desc_terminal", "终端 {id}"),
    ("desc_by_terminal", "称重终端 {id}"),
    ("desc_manifest", "联单 {id}"),
    ("desc_enterprise", "企业 {id}"),
    (
        "desc_weight_fluctuation",
        "{what} 的重量由 {from} 千克变为 {to} 千克{ratio}",
    ),
    ("desc_change", "（变化 {pct}%）"),
    ("desc_apart", "（相差 {pct}%）"),
    (
        "desc_manifest_weight_mismatch",
        "联单 {manifest} 发运 {from} 千克、接收 {to} 千克{ratio}",
    ),
    ("desc_storage_overdue", "{what} 已贮存 {held}"),
    ("desc_over_capacity", "贮存量由 {from} 千克增至 {to} 千克"),
    ("desc_terminal_silent", "{what} 已 {held} 没有上报"),
    (
        "desc_tamper_suspected",
        "{what} 以用过的序号上报了内容不同的读数",
    ),
    ("desc_limit_kg", "，超过贮存能力 {limit} 千克"),
    ("desc_limit_time", "，超过允许的 {limit}"),
    ("desc_limit_pct", "，允许相差 {limit}%"),
    ("desc_where", "，{where}"),
    ("desc_list_sep", "，"),
    ("desc_end", "。"),
    ("unit_day", "{n} 天"),
    ("unit_days", "{n} 天"),
    ("unit_hour", "{n} 小时"),
    ("unit_hours", "{n} 小时"),
    ("unit_minute", "{n} 分钟"),
    ("unit_minutes", "{n} 分钟"),
    ("unit_second", "{n} 秒"),
    ("unit_seconds", "{n} 秒"),
];

const EN: &[(&str, &str)] = &[
    ("search", "Search"),
    ("search_words", "Words"),
    ("no_hits", "Nothing found."),
    ("hits", "Results"),
    ("kind_doc_anomaly", "Alarm"),
    ("kind_doc_manifest", "Manifest"),
    ("kind_doc_note", "Inspection note"),
    (
        "search_unavailable",
        "Search is not available right now; try again shortly.",
    ),
    ("manifest_status", "Status"),
    ("status_opened", "Opened"),
    ("status_dispatched", "Dispatched"),
    ("status_received", "Received"),
    ("generator", "Generator"),
    ("receiver", "Receiver"),
    ("declared_kg", "Declared (kg)"),
    ("dispatched_kg", "Dispatched (kg)"),
    ("received_kg", "Received (kg)"),
    ("opened_at", "Opened (China Standard Time)"),
    ("dispatched_at", "Dispatched (China Standard Time)"),
    ("received_at", "Received (China Standard Time)"),
    ("notes", "Notes"),
    ("manifest_containers", "Containers on the manifest"),
    ("range", "Range"),
    ("range_day", "1 day"),
    ("range_week", "7 days"),
    ("range_month", "30 days"),
    ("weights_chart", "Weights"),
    ("no_readings", "No readings in this range."),
    ("no_readings_ever", "This terminal has no readings yet."),
    ("last_reading", "The last reading was at {at} ({ago})."),
    ("show_last", "Show the {range} up to {day}"),
    (
        "range_moved",
        "No readings in the last {range}; shown are the {range} up to the day of the last reading. {last}",
    ),
    ("today", "today"),
    ("day_ago", "1 day ago"),
    ("days_ago", "{n} days ago"),
    ("no_kpis", "No figures for these 7 days."),
    ("as_table", "Show as a table"),
    ("chart_legend", "Chart legend"),
    (
        "thinned",
        "{n} readings, thinned to {m} points for the width shown (the highest and lowest of each slice kept).",
    ),
    (
        "readings_unavailable",
        "The time-series database cannot be reached; the chart cannot be shown.",
    ),
    ("profile", "Profile"),
    ("storage_capacity_kg", "Storage capacity (kg)"),
    ("none", "None yet."),
    ("terminal", "Terminal"),
    ("terminal_kind", "Terminal kind"),
    ("online", "Online"),
    ("offline", "Offline"),
    ("last_measured", "Last measured (China Standard Time)"),
    ("readings", "Readings"),
    ("inventory", "Containers in storage"),
    ("container", "Container"),
    ("waste_code", "Waste code"),
    ("stage", "Stage"),
    ("last_weight_kg", "Last weight (kg)"),
    ("kpis", "The last 7 days"),
    ("day", "Day"),
    ("weighed_kg", "Weighed (kg)"),
    ("storage_in_kg", "Into storage (kg)"),
    ("storage_out_kg", "Out of storage (kg)"),
    ("custody_chain", "Custody chain"),
    (
        "custody_help",
        "Every weighing of this container with its stage, terminal and weight, in measured order; the fingerprint is the SHA-256 of that reading in the log.",
    ),
    ("measured_at", "Measured (China Standard Time)"),
    ("weight_kg", "Weight (kg)"),
    ("manifest", "Manifest"),
    ("event_seq", "Log sequence"),
    ("fingerprint", "Fingerprint (SHA-256)"),
    ("main_nav", "Main"),
    ("alarms", "Alarms"),
    ("alarms_open", "Open alarms"),
    ("live_alarms", "New alarms (live)"),
    ("alarms_all", "All alarms"),
    ("show_all", "Show all"),
    ("show_open", "Open only"),
    ("no_alarms", "No alarms."),
    ("detected_at", "Detected (China Standard Time)"),
    ("severity", "Severity"),
    ("severity_high", "High"),
    ("severity_medium", "Medium"),
    ("severity_low", "Low"),
    ("subject", "Subject"),
    ("description", "Description"),
    ("state", "State"),
    ("state_open", "Open"),
    ("state_acknowledged", "Acknowledged"),
    ("state_resolved", "Resolved"),
    ("handled", "Handled"),
    ("by", "By"),
    ("at", "At"),
    ("actions", "Actions"),
    ("note", "Note"),
    ("acknowledge", "Acknowledge"),
    ("resolve", "Resolve"),
    ("note_required", "Write a note (1 to 4,000 characters)."),
    ("app_name", "Hazardous Waste Supervision"),
    ("skip_to_main", "Skip to main content"),
    ("breadcrumb", "Breadcrumb"),
    ("national", "National"),
    ("sign_in", "Sign in"),
    ("sign_in_title", "Regulator sign-in"),
    (
        "sign_in_help",
        "Enter the access token your bureau issued. It is kept in a session cookie for this site only and is gone when the browser closes.",
    ),
    ("token", "Access token"),
    ("sign_out", "Sign out"),
    (
        "bad_token",
        "The token is not valid, has expired or was revoked.",
    ),
    ("signed_in_as", "Signed in as"),
    ("tier_admin", "Platform administrator"),
    ("tier_national", "National regulator"),
    ("tier_province", "Provincial regulator"),
    ("tier_enterprise", "Enterprise"),
    ("overview", "Overview"),
    ("summary", "Summary"),
    ("enterprises", "Enterprises"),
    ("terminals", "Terminals"),
    ("terminals_online", "Terminals online"),
    ("kg_in_storage", "In storage (kg)"),
    ("open_alarms", "Open alarms"),
    ("open_alarms_by_kind", "Open alarms by kind"),
    ("kind", "Kind"),
    ("count", "Count"),
    ("no_open_alarms", "No open alarms."),
    ("provinces", "Provinces"),
    (
        "provinces_help",
        "One tile per province: enterprises and open alarms. Select one to open it.",
    ),
    ("province", "Province"),
    ("status_ok", "OK"),
    ("status_alarm", "Alarms"),
    ("enterprise", "Enterprise"),
    ("enterprise_id", "Enterprise id"),
    ("name", "Name"),
    ("city", "City code"),
    ("province_enterprises", "Enterprises in this province"),
    ("not_found_title", "Page not found"),
    (
        "not_found",
        "There is no such page, or it is not yours to see.",
    ),
    ("forbidden_title", "Request refused"),
    (
        "forbidden",
        "This request came from another site and was refused.",
    ),
    ("unavailable_title", "Temporarily unavailable"),
    (
        "unavailable",
        "The business database cannot be reached; try again shortly.",
    ),
    ("back_to_overview", "Back to the overview"),
    ("language", "Language"),
    ("switch_language", "中文"),
    ("kind_weight_fluctuation", "Weight fluctuation"),
    ("kind_terminal_silent", "Terminal silent"),
    ("kind_storage_overdue", "Storage overdue"),
    ("kind_over_capacity", "Over capacity"),
    ("kind_tamper_suspected", "Tampering suspected"),
    ("kind_manifest_weight_mismatch", "Manifest weight mismatch"),
    ("desc_container", "container {id}"),
    ("desc_terminal", "terminal {id}"),
    ("desc_by_terminal", "weighed by terminal {id}"),
    ("desc_manifest", "manifest {id}"),
    ("desc_enterprise", "enterprise {id}"),
    (
        "desc_weight_fluctuation",
        "{what} went from {from} kg to {to} kg{ratio}",
    ),
    ("desc_change", " (a change of {pct}%)"),
    ("desc_apart", " ({pct}% apart)"),
    (
        "desc_manifest_weight_mismatch",
        "manifest {manifest}: {from} kg dispatched, {to} kg received{ratio}",
    ),
    (
        "desc_storage_overdue",
        "{what} has been in storage for {held}",
    ),
    (
        "desc_over_capacity",
        "storage went from {from} kg to {to} kg",
    ),
    ("desc_terminal_silent", "{what} has sent nothing for {held}"),
    (
        "desc_tamper_suspected",
        "{what} sent a different reading under a number it had used before",
    ),
    ("desc_limit_kg", ", over the capacity of {limit} kg"),
    ("desc_limit_time", ", longer than the {limit} allowed"),
    ("desc_limit_pct", ", {limit}% allowed"),
    ("desc_where", ", {where}"),
    ("desc_list_sep", ", "),
    ("desc_end", "."),
    ("unit_day", "{n} day"),
    ("unit_days", "{n} days"),
    ("unit_hour", "{n} hour"),
    ("unit_hours", "{n} hours"),
    ("unit_minute", "{n} minute"),
    ("unit_minutes", "{n} minutes"),
    ("unit_second", "{n} second"),
    ("unit_seconds", "{n} seconds"),
];

/// Province-level divisions (GB/T 2260 codes) the grid shows: (code, 中文, English).
pub const PROVINCES: &[(&str, &str, &str)] = &[
    ("110000", "北京市", "Beijing"),
    ("120000", "天津市", "Tianjin"),
    ("130000", "河北省", "Hebei"),
    ("140000", "山西省", "Shanxi"),
    ("150000", "内蒙古自治区", "Inner Mongolia"),
    ("210000", "辽宁省", "Liaoning"),
    ("220000", "吉林省", "Jilin"),
    ("230000", "黑龙江省", "Heilongjiang"),
    ("310000", "上海市", "Shanghai"),
    ("320000", "江苏省", "Jiangsu"),
    ("330000", "浙江省", "Zhejiang"),
    ("340000", "安徽省", "Anhui"),
    ("350000", "福建省", "Fujian"),
    ("360000", "江西省", "Jiangxi"),
    ("370000", "山东省", "Shandong"),
    ("410000", "河南省", "Henan"),
    ("420000", "湖北省", "Hubei"),
    ("430000", "湖南省", "Hunan"),
    ("440000", "广东省", "Guangdong"),
    ("450000", "广西壮族自治区", "Guangxi"),
    ("460000", "海南省", "Hainan"),
    ("500000", "重庆市", "Chongqing"),
    ("510000", "四川省", "Sichuan"),
    ("520000", "贵州省", "Guizhou"),
    ("530000", "云南省", "Yunnan"),
    ("540000", "西藏自治区", "Xizang"),
    ("610000", "陕西省", "Shaanxi"),
    ("620000", "甘肃省", "Gansu"),
    ("630000", "青海省", "Qinghai"),
    ("640000", "宁夏回族自治区", "Ningxia"),
    ("650000", "新疆维吾尔自治区", "Xinjiang"),
];

/// A province's name in `lang` (the code itself when unknown).
pub fn province_name(code: &str, lang: Lang) -> String {
    PROVINCES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, zh, en)| if lang == Lang::En { *en } else { *zh })
        .unwrap_or(code)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn both_catalogues_have_the_same_keys_once_each() {
        let keys = |c: &[(&str, &str)]| -> BTreeSet<String> {
            c.iter().map(|(k, _)| (*k).to_owned()).collect()
        };
        assert_eq!(keys(ZH_CN), keys(EN));
        assert_eq!(keys(ZH_CN).len(), ZH_CN.len(), "a key twice in zh-CN");
        assert_eq!(keys(EN).len(), EN.len(), "a key twice in en");
        assert!(ZH_CN.iter().chain(EN).all(|(_, v)| !v.trim().is_empty()));
    }

    #[test]
    fn every_anomaly_kind_has_a_label_in_both() {
        for kind in custodian_events::domain::AnomalyKind::ALL {
            let key = format!("kind_{}", kind.name());
            assert!(
                ZH_CN.iter().any(|(k, _)| *k == key) && EN.iter().any(|(k, _)| *k == key),
                "no label for {key}"
            );
        }
    }

    #[test]
    fn numbers_group_by_three() {
        assert_eq!(Lang::En.int(0), "0");
        assert_eq!(Lang::En.int(1234567), "1,234,567");
        assert_eq!(Lang::ZhCn.int(-1000), "-1,000");
        assert_eq!(Lang::En.dec1(1234.56), "1,234.6");
        assert_eq!(Lang::En.dec1(0.04), "0.0");
    }

    #[test]
    fn instants_are_written_for_the_locale() {
        assert_eq!(
            Lang::ZhCn.cst("2026-11-20 16:00:01"),
            "2026年11月20日 16:00:01"
        );
        assert_eq!(Lang::En.cst("2026-11-20 16:00:01"), "20 Nov 2026, 16:00:01");
        assert_eq!(Lang::En.cst("2026-01-05 08:30:00"), "5 Jan 2026, 08:30:00");
        assert_eq!(Lang::En.cst(""), "");
        assert_eq!(Lang::ZhCn.cst("not a time"), "not a time");
    }

    #[test]
    fn durations_are_their_two_largest_units() {
        assert_eq!(Lang::ZhCn.duration(31 * 86_400 + 3_600 + 5), "31 天 1 小时");
        assert_eq!(Lang::En.duration(86_400 + 59), "1 day");
        assert_eq!(Lang::En.duration(2 * 3_600 + 5 * 60), "2 hours 5 minutes");
        assert_eq!(Lang::En.duration(45), "45 seconds");
        assert_eq!(Lang::En.duration(0), "0 seconds");
    }

    #[test]
    fn the_mainland_provinces_are_all_there_with_names() {
        assert_eq!(PROVINCES.len(), 31);
        assert_eq!(province_name("440000", Lang::ZhCn), "广东省");
        assert_eq!(province_name("320000", Lang::En), "Jiangsu");
        assert_eq!(province_name("999999", Lang::En), "999999");
    }
}
